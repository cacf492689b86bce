"""Label constants, defined in one place.

``CHESTXRAY14_LABELS`` is the order used by the CheXNet paper (Rajpurkar et al. 2017), its public
reproductions and their released weights: the head's row ``k`` is the finding ``CHESTXRAY14_LABELS[k]``.
"""

CHESTXRAY14_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: CheXpert's 14 observations in the column order of its ``train.csv``/``valid.csv`` (Irvin et al. 2019);
#: MIMIC-CXR-JPG's ``-chexpert.csv``/``-negbio.csv`` label files use the same names.
CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The five CheXpert competition tasks (the paper's evaluation set, in its order).
CHEXPERT_COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

#: Names ``data.labels`` accepts instead of a list (expanded when the config is loaded).
LABEL_PRESETS = {
    "chestxray14": CHESTXRAY14_LABELS,
    "chexpert": CHEXPERT_LABELS,
    "chexpert_competition": CHEXPERT_COMPETITION_LABELS,
}

#: The label vocabulary of each chest dataset (``data.dataset`` -> names its label files use).
DATASET_LABELS = {
    "chestxray14": CHESTXRAY14_LABELS,
    "chexpert": CHEXPERT_LABELS,
    "mimic_cxr": CHEXPERT_LABELS,
}

#: ChestX-ray14 finding -> CheXpert observation, only where both name the same finding. Both label sets
#: were mined from reports (NIH: NLP on report text, Wang et al. 2017; CheXpert/MIMIC: the CheXpert
#: labeler), so "same" means the same radiological finding, not identical labelling. Effusion is
#: the one renamed pair: NIH's "Effusion" is pleural effusion.
CHESTXRAY14_TO_CHEXPERT = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}
CHEXPERT_TO_CHESTXRAY14 = {v: k for k, v in CHESTXRAY14_TO_CHEXPERT.items()}

#: Why each ChestX-ray14 finding has no CheXpert counterpart (reported when a model class is skipped).
CHESTXRAY14_UNPAIRED = {
    "Infiltration": "CheXpert has no infiltration label; its Lung Opacity is a broader umbrella (also "
                    "consolidation, edema, atelectasis, ...), so the two are not the same finding",
    "Mass": "CheXpert's Lung Lesion lumps masses, nodules and other lesions together: not one-to-one",
    "Nodule": "CheXpert's Lung Lesion lumps masses, nodules and other lesions together: not one-to-one",
    "Emphysema": "CheXpert has no emphysema label",
    "Fibrosis": "CheXpert has no fibrosis label (Pleural Other covers pleural fibrosis only)",
    "Pleural_Thickening": "CheXpert's Pleural Other lumps pleural thickening with other pleural findings: "
                          "not one-to-one",
    "Hernia": "CheXpert has no hernia label",
}

#: Why each CheXpert observation has no ChestX-ray14 counterpart.
CHEXPERT_UNPAIRED = {
    "No Finding": "ChestX-ray14 has no No Finding class (its No Finding is all 14 labels at zero)",
    "Enlarged Cardiomediastinum": "ChestX-ray14 has no such label (Cardiomegaly is only part of it)",
    "Lung Opacity": "ChestX-ray14 has no opacity umbrella label (Infiltration is narrower)",
    "Lung Lesion": "ChestX-ray14 splits lesions into Mass and Nodule: not one-to-one",
    "Pleural Other": "ChestX-ray14's Pleural_Thickening is only part of Pleural Other: not one-to-one",
    "Fracture": "ChestX-ray14 has no fracture label",
    "Support Devices": "ChestX-ray14 has no support-device label",
}

#: Binary malaria-cell task: a single sigmoid output whose positive class is ``Parasitized``.
MALARIA_LABELS = ("Parasitized",)
MALARIA_CLASSES = ("Uninfected", "Parasitized")  # folder names; index = target value

#: CheXNet paper, per-class test AUROC (arXiv:1711.05225, Table 1), in CHESTXRAY14_LABELS order.
CHEXNET_PAPER_AUROC = (
    0.8094, 0.9248, 0.8638, 0.7345, 0.8676, 0.7802, 0.7680,
    0.8887, 0.7901, 0.8878, 0.9371, 0.8047, 0.8062, 0.9164,
)

#: ImageNet statistics used by CheXNet and by torchvision's DenseNet weights (RGB, 0..1 scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

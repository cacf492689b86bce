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

"""Metrics: classification (AUROC with bootstrap CIs, F1, confusion), localization (IoU, IoBB, pointing
game) and faithfulness (deletion/insertion AUC, Average Drop, Increase in Confidence)."""

"""Loops over datasets: training, evaluation and inference. Tools call these; nothing below imports them."""

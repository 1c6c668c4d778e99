"""Structured channel pruning (the ``prune-channels`` pass): ``groups`` finds which channels go together,
``selection`` ranks them and chooses, ``removal`` edits the graph, ``reconstruction`` re-fits what reads the
pruned layers on calibration data, ``sensitivity`` measures each group's error at several ratios."""

"""Training of semarc's image codecs: the trainer (``trainer``), its
command-line options (``options``, importable without torch) and the training
corpus with its fixed validation split (``corpus``)."""

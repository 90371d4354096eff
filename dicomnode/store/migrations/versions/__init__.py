"""Migration scripts, one per schema change, named ``<NNNN>_<slug>.py``."""

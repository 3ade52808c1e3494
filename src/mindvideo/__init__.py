"""mindvideo — MinD-Video (Chen, Qing, Zhou, NeurIPS 2023): video reconstruction from fMRI.

Stages (see ``mindvideo --help``): simulate → prepare → pretrain → contrast → tune-video →
cotrain → reconstruct → evaluate → explain.
"""

__version__ = "0.1.0.dev0"

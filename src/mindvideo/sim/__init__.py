"""The simulator: writes a dataset in the exact on-disk layout of Wen 2018 (and an HCP-style
resting-state corpus) from an encoding model of visual cortex, with its ground truth.

- :mod:`mindvideo.sim.vocabulary`: what scenes show and how they are described (classes,
  motions, captions);
- :mod:`mindvideo.sim.stimuli`: planning and rendering scenes, procedural and real footage;
- :mod:`mindvideo.sim.brain`: the encoding model (receptive fields, haemodynamics, noise);
- :mod:`mindvideo.sim.simulate`: the datasets on disk (``mindvideo simulate``).

It sits one layer above :mod:`mindvideo.data`: it writes the layout that the real-data code
reads, and real-data code never imports it (docs/simulator.md).
"""

from mindvideo.sim.simulate import simulate_hcp_rest, simulate_wen2018

__all__ = ["simulate_hcp_rest", "simulate_wen2018"]

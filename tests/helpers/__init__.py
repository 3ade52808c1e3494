"""Shared test helpers, one module per topic; test files import them as ``helpers.<topic>``.

- :mod:`helpers.pipeline`: tiny real pipeline parts (UNet, VAE, encoder, scheduler, pipeline).
- :mod:`helpers.sd`: a tiny Stable-Diffusion-1.5-style folder and a prepared subject for it.
- :mod:`helpers.clip`: a tiny CLIP folder and a prepared subject with class-driven fMRI.
- :mod:`helpers.run`: a tiny run directory (prepare … evaluate) and reconstruct folders.
- :mod:`helpers.blip`: a tiny random BLIP captioning model folder.
- :mod:`helpers.datasets`: copies of the simulated raw dataset, to modify.

Fixtures live in the ``conftest.py`` nearest the tests that share them, not here.
"""

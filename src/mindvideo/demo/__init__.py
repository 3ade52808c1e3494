"""The CPU demo: ``mindvideo demo``'s orchestration (:mod:`mindvideo.demo.run`) and the small
stand-ins it trains for the pretrained models a GPU user loads (:mod:`mindvideo.demo.standins`).

This package and the CLI are the only code that may import the simulator (:mod:`mindvideo.sim`);
an import-linter contract in ``pyproject.toml`` enforces it.
"""

"""The demo: a corpus of real images with known ground truth, and the evaluation of a run on it.

Not part of the pipeline library: `make demo` builds the corpus (`python -m demo.corpus`), runs
the pipeline on it as the source `demo`, then measures the run (`python -m demo.evaluate`).
Tests and benchmarks use `demo.corpus` for its real images (arcade sprites, scikit-image photos,
MNIST digits).
"""

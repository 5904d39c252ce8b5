"""The measurements of `mnistlab bench`: mnistlab's engine against the pipeline people usually write, on one machine.

The figures of the last run: benchmarks/RESULTS.md and RESULTS.json; how the `fast` recipe
was chosen: benchmarks/recipes.md.

The usual pipeline (usual.py) is torchvision's MNIST recipe done by hand; mnistlab's engine
keeps the dataset as one uint8 tensor and works on whole batches. Both train the same model
with the same optimizer settings (measure.py; memory.py measures the peak memory of a run,
timing.py times). The bench also times the `fast` recipe against the previous one and a short
study with and without stacked seeds. One `mnistlab bench` run writes RESULTS.md (render.py)
and RESULTS.json.
"""

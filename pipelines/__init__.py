"""safedrift's study, one package per stage, each with its entry point in its ``__init__``:

- ``translate``  — ``build_datasets``: the benign set and the eval suite in every language (Ray Data).
- ``finetune``   — ``finetune_cell``: one cell's LoRA/full fine-tune (Ray Train + DeepSpeed).
- ``evaluate``   — ``evaluate_cell``: answers (``backends/``), judges (``judges/``), measures.
- ``sweep``      — ``run_sweep``: the grid of cells with Ray Tune, one trial per cell.
- ``report``     — ``write_report``: tables, findings, figures, provenance, one HTML page.

Shared pieces sit at the top: ``config`` (the schema), ``presets`` (loading and checking a config),
``cells``, ``run`` (the stages in order), ``layout`` (the workdir and the environment), ``registry``,
``hashing``, ``errors``, ``prepare`` and ``cli``; ``registries/`` holds languages, models and data sets."""

"""Framework-free training pieces: augmentation, rows from datasets, model families,
the epoch loop, LR schedules and metrics history. Ray glue: ``emotion.pipelines.training``."""

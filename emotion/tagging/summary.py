"""What a tagging job did: counts, timings and the files it committed, as printed at the
end of ``emotion tag`` and written to ``summary_json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class TagSummary:
    images: int = 0
    people: int = 0
    errors: int = 0
    listed: int = 0  # inputs listed (those already tagged included)
    skipped_already_tagged: int = 0
    retried_errors: int = 0  # images whose earlier error rows were tagged again (retry_errors)
    quarantined: list[str] = field(default_factory=list)  # unreadable output files moved aside
    seconds: float = 0.0  # wall time of the whole job, Ray start-up included
    pipeline_seconds: float = 0.0  # from the first batch to the last unit written
    images_per_second: float = 0.0  # images / pipeline_seconds
    first_output_seconds: float = 0.0  # from the pipeline's start to its first rows (actor start-up)
    steady_images_per_second: float = 0.0  # images after the first output batch / the time after it
    emotions: dict[str, int] = field(default_factory=dict)
    images_by_node: dict[str, int] = field(default_factory=dict)  # which Ray nodes detected how many
    output: str = ""
    files: list[str] = field(default_factory=list)  # units committed by this run

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def render(self) -> str:
        lines = [
            f"tagged {self.images} images in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s over {self.pipeline_seconds:.1f} s of pipeline, "
            f"first rows after {self.first_output_seconds:.1f} s)"
            f"{f'; skipped {self.skipped_already_tagged} already tagged' if self.skipped_already_tagged else ''}"
            f"{f'; retried {self.retried_errors} earlier errors' if self.retried_errors else ''}",
            f"people found: {self.people}   images that failed: {self.errors}",
        ]
        if self.emotions:
            width = max(len(k) for k in self.emotions)
            lines.append("emotions:")
            lines += [f"  {k:<{width}}  {v}" for k, v in sorted(self.emotions.items(), key=lambda kv: -kv[1])]
        if len(self.images_by_node) > 1:
            lines.append("images per node: " + ", ".join(f"{k[:8]}: {v}" for k, v in sorted(self.images_by_node.items())))
        if self.quarantined:
            lines.append(f"unreadable output files moved aside: {', '.join(self.quarantined)}")
        lines.append(f"output: {self.output} ({len(self.files)} files written)")
        return "\n".join(lines)

"""Where benchmark scores come from: a user's scores file and the tasks the platform measures."""

import dagster as dg
from pydantic import Field

from modelmap.reports.benchmarks import ScoresFile, empty_scores, parse_scores_file
from modelmap.reports.tasks import Task, default_tasks, read_tasks

MEASURE = ("missing", "always", "never")


class BenchmarkResource(dg.ConfigurableResource):
    """Published scores (`scores_file`, CSV or Parquet) and measured multiple-choice tasks.

    `measure`: "missing" measures the tasks for models the file does not list, "always" for
    every model, "never" only reads the file. `tasks_dir` holds `<task>.jsonl` files (format
    in `modelmap.reports.tasks`); by default the embedded held-out tasks are used.
    """

    scores_file: str | None = Field(
        default=None, description="published benchmark scores (CSV or Parquet); none: no file"
    )
    tasks_dir: str | None = Field(
        default=None,
        description="folder of `<task>.jsonl` multiple-choice tasks; none: the embedded "
        "held-out tasks",
    )
    n_items: int = Field(default=100, description="items per embedded task")
    measure: str = Field(
        default="missing",
        description="which models the tasks are measured for: `missing` (not in the file), "
        "`always`, `never`",
    )

    def should_measure(self, listed_in_file: bool) -> bool:
        """Whether to measure the tasks for a model (`measure`, validated here)."""
        if self.measure not in MEASURE:
            raise ValueError(
                f"benchmarks.measure (MODELMAP_BENCHMARK_MEASURE) is {self.measure!r}; "
                f"expected one of {', '.join(MEASURE)}"
            )
        return self.measure == "always" or (self.measure == "missing" and not listed_in_file)

    def published(self):
        file = self.scores_file_read()
        return file.scores if file else empty_scores()

    def scores_file_read(self) -> ScoresFile | None:
        """The scores file as read (scores, its model ids, ignored columns); None without one."""
        return parse_scores_file(self.scores_file) if self.scores_file else None

    def tasks(self) -> list[Task]:
        return read_tasks(self.tasks_dir) if self.tasks_dir else default_tasks(n_items=self.n_items)

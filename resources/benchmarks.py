"""Where benchmark scores come from: a user's scores file and the tasks the platform measures."""

from typing import Literal

import dagster as dg

from modelmap.reports.benchmarks import ScoresFile, empty_scores, read_scores
from modelmap.reports.tasks import Task, default_tasks, read_tasks


class BenchmarkResource(dg.ConfigurableResource):
    """Published scores (`scores_file`, CSV or Parquet) and measured multiple-choice tasks.

    `measure`: "missing" measures the tasks for models the file does not list, "always" for
    every model, "never" only reads the file. `tasks_dir` holds `<task>.jsonl` files (format
    in `modelmap.reports.tasks`); by default the embedded held-out tasks are used.
    """

    scores_file: str | None = None
    tasks_dir: str | None = None
    n_items: int = 100  # items per embedded task
    measure: Literal["missing", "always", "never"] = "missing"

    def published(self):
        file = self.scores_file_read()
        return file.scores if file else empty_scores()

    def scores_file_read(self) -> ScoresFile | None:
        """The scores file as read (scores, its model ids, ignored columns); None without one."""
        return read_scores(self.scores_file) if self.scores_file else None

    def tasks(self) -> list[Task]:
        return read_tasks(self.tasks_dir) if self.tasks_dir else default_tasks(n_items=self.n_items)

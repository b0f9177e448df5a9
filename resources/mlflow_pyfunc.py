"""The registered predictor's MLflow pyfunc class, in its own module so that importing
`resources.mlflow` (every Dagster run does) does not import mlflow (1.5 s per run process)."""

import mlflow
import numpy as np
import pandas as pd

from modelmap.reports.predictor import ScorePredictor


class ScorePredictorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a `ScorePredictor` (artifact "predictor": its .npz file).

    Input: a DataFrame whose columns are the corpus text ids (any order; extra columns are
    ignored) or, called directly (`unwrap_python_model().predict(None, X)`), a 2-D array of
    width N. Through pyfunc the logged signature (one named column per text) makes MLflow
    reorder a DataFrame's columns and refuse bare arrays. Output: one column per target.
    """

    def load_context(self, context) -> None:
        self.predictor = ScorePredictor.load(context.artifacts["predictor"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        p = self.predictor
        if isinstance(model_input, pd.DataFrame):
            missing = [t for t in p.text_ids if t not in model_input.columns]
            if missing:
                raise ValueError(
                    f"input lacks {len(missing)} of the {p.n_texts} corpus text ids "
                    f"(first: {missing[:5]})"
                )
            model_input = model_input[p.text_ids].to_numpy(dtype=np.float64)
        return pd.DataFrame(p.predict(np.asarray(model_input)), columns=p.targets)

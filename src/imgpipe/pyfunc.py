"""The trained model as an MLflow pyfunc: image paths or bytes in, classes out.

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    model.predict(pd.DataFrame({"path": ["cat.jpg"]}))   # or {"image": [jpeg_bytes]}

returns one row per image: `predicted`, `probability` and `p_<class>` for every class.
The model is logged "from code" (this file), not pickled: loading it runs no pickle.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from imgpipe.predict import Predictor

MODEL_ARTIFACT = "model_file"  # key of models/model.pt among the pyfunc's artifacts


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Wraps `imgpipe.predict.Predictor`; the model file travels as an artifact."""

    def load_context(self, context) -> None:
        self.predictor = Predictor(Path(context.artifacts[MODEL_ARTIFACT]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        images = [_one_image(row) for _, row in model_input.iterrows()]
        predictions = self.predictor.predict(images)
        table = pd.DataFrame({"predicted": [p.predicted for p in predictions],
                              "probability": [p.probability for p in predictions]})
        for name in self.predictor.classes:
            table[f"p_{name}"] = [p.probabilities[name] for p in predictions]
        return table


def _one_image(row: pd.Series) -> str | bytes:
    image = row.get("image")
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    path = row.get("path")
    if isinstance(path, str) and path:
        return path
    raise ValueError("each row needs a `path` (string) or an `image` (bytes)")


def signature(classes: list[str]) -> ModelSignature:
    inputs = Schema([ColSpec("string", "path", required=False),
                     ColSpec("binary", "image", required=False)])
    outputs = Schema([ColSpec("string", "predicted"), ColSpec("double", "probability")]
                     + [ColSpec("double", f"p_{name}") for name in classes])
    return ModelSignature(inputs=inputs, outputs=outputs)


mlflow.models.set_model(ImageClassifierModel())

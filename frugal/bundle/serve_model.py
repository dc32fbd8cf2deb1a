"""MLflow "model from code" entry: the bundle stores this file, not a pickle, so loading it runs no unpickling."""

from mlflow.models import set_model

from frugal.bundle.pyfunc import FrugalClassifier

set_model(FrugalClassifier())

"""Run tags shared by the sensors that request runs and the assets that read them."""

# The Hub sha a run must score: `hub_models_sensor` sets it, `likelihood` downloads exactly it.
REVISION_TAG = "modelmap/revision"
# Why the run was requested: `hub-new` or `hub-update`.
SOURCE_TAG = "modelmap/source"
# The base models the card declared when the sensor listed the model (comma-separated); the
# run records the declaration at the scored sha in the likelihood file's metadata.
BASE_MODEL_TAG = "modelmap/base_model"

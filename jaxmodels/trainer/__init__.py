"""Training library: optimizer, train state + step, metrics. `train.py` is the entry point."""
from jaxmodels.trainer.metrics import MetricWriter
from jaxmodels.trainer.optim import learning_rate_schedule, make_optimizer, trainable_filter
from jaxmodels.trainer.train_state import TrainState, make_train_step, train_step

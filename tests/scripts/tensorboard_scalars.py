"""Prints every scalar of a TensorBoard log directory (local or gs://) as one JSON object,
``{tag: [[step, value], ...]}``, read with TensorBoard's own loader."""

import json
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

if __name__ == "__main__":
    accumulator = event_accumulator.EventAccumulator(
        sys.argv[1], size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    scalars = {
        tag: [[e.step, float(tensor_util.make_ndarray(e.tensor_proto))] for e in events]
        for tag in accumulator.Tags()["tensors"]
        for events in [accumulator.Tensors(tag)]
    }
    print(json.dumps(scalars))

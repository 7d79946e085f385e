"""Run scripts/train_t2i.py under Accelerate's FSDP or DeepSpeed on gloo CPU processes (tests only).

Accelerate turns an FSDP or DeepSpeed config into that topology only on accelerator devices; on
CPU processes it quietly falls back to plain multi-process data parallel. torch's FSDP2 runs on
CPU (gloo), and so does DeepSpeed's ZeRO (``DS_ACCELERATOR=cpu``, gloo when oneCCL is absent), so
this launcher sets the distributed type back after Accelerate's state is built: the trainer then
takes the same path it takes on GPUs. Use with ``ACCELERATE_USE_CPU=1``.
"""

import runpy
import sys
from pathlib import Path

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, deepspeed_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin, **kwargs)
    if deepspeed_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
        self.distributed_type = DistributedType.DEEPSPEED
        deepspeed_plugin.set_mixed_precision(self._mixed_precision)
        deepspeed_plugin.select(_from_accelerator_state=True)
        self.deepspeed_plugins = deepspeed_plugin
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # Later AcceleratorState() calls copy PartialState's fields over their own: set both.
        accelerate.state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


accelerate.state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu
script = Path(__file__).resolve().parents[2] / "scripts" / "train_t2i.py"
sys.argv[0] = str(script)
runpy.run_path(str(script), run_name="__main__")

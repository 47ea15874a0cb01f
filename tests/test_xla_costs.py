"""Reading XLA's analyses: HLO facts the cost analysis misses, out-of-memory figures."""

import pytest

from nin_jax import xla_costs

# Optimised HLO as the TPU compiler prints it (layouts, tiling, operands without shapes).
HLO = """
HloModule jit_train_on_inputs, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_computation (param_0.2: f32[8,10], param_1.1: s32[8,2]) -> f32[8] {
  %param_0.2 = f32[8,10]{1,0:T(8,128)} parameter(0)
  %concatenate.13 = s32[8,2]{1,0:T(8,128)} parameter(1)
  %custom-call.1 = s32[8,2]{1,0:T(8,128)} custom-call(%concatenate.13), custom_call_target="GatherScatterIndicesBitpacked", metadata={op_name="gather"}
  ROOT %gather.8 = f32[8]{0:T(128)} gather(%param_0.2, %custom-call.1), slice_sizes={1,1}
}

ENTRY %main (p: f32[5,5,3,192]) -> f32[5,5,3,192] {
  %p = f32[5,5,3,192]{3,2,1,0:T(8,128)} parameter(0)
  %w = (s32[], f32[4]{0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  %w2 = (s32[], f32[4]{0}) while(%t2), condition=%cond, body=%body
  %all-reduce.24 = (f32[192]{0:T(128)S(1)}, /*index=1*/f32[5,5,3,192]{3,2,1,0:T(8,128)S(1)}) all-reduce(%a, %b), channel_id=1, to_apply=%add
  %ars = f32[10]{0} all-reduce-start(%c), channel_id=2, to_apply=%add
  %ard = f32[10]{0} all-reduce-done(%ars)
  %ag = bf16[16,4]{1,0} all-gather(%d), dimensions={0}
  %k = bf16[64,8,32]{2,1,0} custom-call(%p), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"cost_estimate": {"flops": 1, "bytes_accessed": 2}}}
  ROOT %r = f32[5,5,3,192]{3,2,1,0} copy(%p)
}
"""  # noqa: E501


def test_array_bytes():
    assert xla_costs.array_bytes("(f32[2,3]{1,0:T(8,128)}, bf16[4], pred[])") == 24 + 8 + 1
    assert xla_costs.array_bytes("u8[128,32,32,3]{3,2,1,0}") == 128 * 32 * 32 * 3


def test_hlo_facts():
    facts = xla_costs.hlo_facts(HLO)
    assert facts.while_loops == (12, None)
    assert facts.custom_calls == {"GatherScatterIndicesBitpacked": 1}
    assert facts.custom_call_bytes == 2 * 8 * 2 * 4  # Its s32[8,2] result and operand.
    # A kernel with its own cost estimate (Pallas): costed by XLA, counted apart.
    assert facts.costed_kernels == 1
    assert facts.costed_kernel_bytes == 2 * 64 * 8 * 32 + 4 * 5 * 5 * 3 * 192
    # The tuple all-reduce (gradients) and the async one, counted once: 4 bytes per f32.
    assert facts.all_reduce_bytes == 4 * (192 + 5 * 5 * 3 * 192) + 4 * 10
    assert facts.other_collectives == {"all-gather": 1}


def test_memory_total_counts_aliased_buffers_once():
    memory = xla_costs.Memory(
        arguments=100, outputs=40, aliased=30, temporaries=7, generated_code=3
    )
    assert memory.total == 100 + 40 - 30 + 7 + 3


@pytest.mark.parametrize(
    "message, required, available",
    [
        (
            "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
            "temporaries (180.00G) exceeds available HBM (15.75G).",
            180 * 2**30,
            15.75 * 2**30,
        ),
        (
            "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
            "space hbm. Used 20.51G of 15.75G hbm. Exceeded hbm capacity by 4.76G.\n\nTotal...",
            20.51 * 2**30,
            15.75 * 2**30,
        ),
    ],
)
def test_out_of_memory_figures(message, required, available):
    oom = xla_costs.out_of_memory(RuntimeError(message))
    assert oom.required == pytest.approx(required, rel=1e-6)
    assert oom.available == pytest.approx(available, rel=1e-6)
    assert "\n" not in oom.message


def test_other_errors_are_not_out_of_memory():
    assert xla_costs.out_of_memory(RuntimeError("INVALID_ARGUMENT: bad shape")) is None

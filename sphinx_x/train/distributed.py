"""Processes, devices and FSDP2 sharding.

Under `torchrun` (WORLD_SIZE > 1) the process group is initialised with NCCL on GPUs and gloo on CPU,
and the model is sharded with FSDP2 (`fully_shard`): one unit per LLM decoder layer, one per block of
each vision expert (ConvNeXt stages, ViT blocks), and the root for the rest (embeddings, head,
projector, image tags); a frozen expert is a unit of its own. On GPU with `precision: bf16`
parameters are cast to bf16 for compute and gradients are reduced in fp32 (`MixedPrecisionPolicy`).
The model is sharded while still on the meta device and then filled (`load_sharded_from_dir`,
`load_sharded_from_rank0`), so no rank holds more than its shards plus one slice read from the files
(rank 0 holds about one full model when it builds a preset). A single process trains the plain module.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Read torchrun's environment; initialise the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few scalars over ranks (in float64, so token counts stay exact)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float, info: DistInfo) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def _comm_device(info: DistInfo) -> torch.device:
    return info.device if dist.get_backend() == "nccl" else torch.device("cpu")


# ---- FSDP2 ---------------------------------------------------------------------------------------
def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become their own FSDP unit: LLM decoder layers and vision-expert blocks."""
    units: list[nn.Module] = list(model.llm.get_decoder().layers)
    for expert in model.visual.experts.values():
        units.extend(expert.shard_units())  # each expert kind names its blocks (sphinx_x.experts)
    return units


def apply_fsdp(model: nn.Module, info: DistInfo, bf16: bool) -> nn.Module:
    """Shard `model` in place with FSDP2 over all ranks (one mesh dimension)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    kwargs = {"mesh": mesh}
    if bf16 and info.device.type == "cuda":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in shard_units(model):
        fully_shard(unit, **kwargs)
    for expert in model.visual.experts.values():
        if expert.cfg.frozen:  # its own unit: the rest of a frozen trunk (stem, norms) may be bf16, the root fp32
            # The unit is the expert, not its trunk: experts call trunk.forward_features (or the trunk's parts),
            # which would bypass hooks on the trunk's forward; both of the expert's entry points gather it.
            fully_shard(expert, **kwargs)
            register_fsdp_forward_method(expert, "forward_normalized")
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when `model` was sharded with FSDP2 (`apply_fsdp`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def load_sharded_from_dir(model: nn.Module, directory) -> None:
    """Fill a sharded model (after `to_empty`) from a model directory: each rank reads from the files only
    the rows of its own slices (safetensors slicing), cast one slice at a time, so no rank holds more than
    its shards plus one slice; unsharded tensors (none under FSDP2's defaults) are read whole."""
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    from sphinx_x.model_io import tied_names, weight_index

    where = weight_index(directory)
    targets = _state_tensors(model)
    missing = [n for n in targets if n not in where and n not in tied_names(model.config)]
    if missing:
        raise ValueError(f"{directory}: weights do not match the config: missing {missing[:5]}")
    # The file is opened per tensor: pages of a mapped file count towards RSS while it stays mapped.
    with torch.no_grad():
        for name, target in targets.items():
            if name not in where:
                continue  # a tied weight: its storage is filled under the other name
            with safe_open(str(where[name]), framework="pt") as f:
                stored = f.get_slice(name)
                shape = tuple(stored.get_shape())
                if shape != tuple(target.shape):
                    raise ValueError(f"{directory}: {name} is stored with shape {shape}, the config "
                                     f"builds {tuple(target.shape)}")
                if isinstance(target, DTensor):  # this rank's slice only: no communication
                    local = target.to_local()
                    size, offset = compute_local_shape_and_global_offset(shape, target.device_mesh,
                                                                         target.placements)
                    if local.numel():
                        index = tuple(slice(o, o + n) for o, n in zip(offset, size))
                        local.copy_(stored[index] if index else f.get_tensor(name))
                else:
                    target.copy_(f.get_tensor(name))


def load_sharded_from_rank0(model: nn.Module, full: nn.Module | None, info: DistInfo) -> None:
    """Fill a sharded model (after `to_empty`) from rank 0's full model (`None` on the other ranks),
    broadcast tensor by tensor. Rank 0 frees each full tensor once sent, so its memory stays about one
    full model; the other ranks hold their shards plus one tensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    targets = _state_tensors(model)
    source = _state_tensors(full) if full is not None else None
    if source is not None and list(source) != list(targets):
        raise RuntimeError("the full model and the sharded one name different tensors")
    comm = _comm_device(info)
    with torch.no_grad():
        for name, target in targets.items():
            if source is not None:
                buf = source[name].detach().to(comm, target.dtype).contiguous()
                source[name].data = torch.empty(0, dtype=source[name].dtype)  # (tied aliases see it too)
            else:
                buf = torch.empty(tuple(target.shape), dtype=target.dtype, device=comm)
            dist.broadcast(buf, src=0)
            if isinstance(target, DTensor):  # this rank's slice of the broadcast tensor
                local = distribute_tensor(buf.to(info.device), target.device_mesh, target.placements,
                                          src_data_rank=None)
                target.to_local().copy_(local.to_local())
                del local
            else:
                target.copy_(buf)
            del buf


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (a tied one once, under its first name) and persistent buffers, in module order."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters())
    for name, buf in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        if attr not in model.get_submodule(owner)._non_persistent_buffers_set:
            out[name] = buf
    return out


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulation (FSDP2 only)."""
    fn = getattr(model, "set_requires_gradient_sync", None)
    if fn is not None:
        fn(sync)


def full_state_dict(model: nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (rank 0 gets it; other ranks get {} under FSDP)."""
    if not info.distributed and not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """The optimizer state keyed by parameter name, unsharded, on CPU (rank 0 under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=opts)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, info: DistInfo) -> None:
    """Inverse of `full_optimizer_state`: every rank passes the full state and keeps its shard.

    A parameter that had no gradient yet when the checkpoint was written (the image tags, when every step
    so far was a text-only batch) has no AdamW state there. PyTorch's loader initialises every state with
    a zero-gradient step first (step count 1), so such states are removed again: the parameter must start
    from a fresh state, with step 1 at its first real update, exactly as in an uninterrupted run.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
    saved = set(state.get("state", {}))
    for name, param in model.named_parameters():
        if param.requires_grad and name not in saved:
            optimizer.state.pop(param, None)

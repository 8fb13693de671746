"""Graph stage: the operator DAG of prefill and decode, placed on GPUs and annotated with FLOPs and bytes.

dag.py holds the node schema and the Dag container, blocks.py the builder's primitives and block
copies, layers.py the transformer layers, passes.py whole passes and `build`.
"""

from simulator.graph.blocks import PYTORCH_HELPER_KERNELS
from simulator.graph.dag import TWINS, Counted, Dag, NodeAttrs, NodeKind, as_dag, digraph, node_dicts, row_attrs
from simulator.graph.passes import PassBuilder, build, build_dag, sampled_decode_steps

__all__ = [
    "PYTORCH_HELPER_KERNELS",
    "TWINS",
    "Counted",
    "Dag",
    "NodeAttrs",
    "NodeKind",
    "PassBuilder",
    "as_dag",
    "build",
    "build_dag",
    "digraph",
    "node_dicts",
    "row_attrs",
    "sampled_decode_steps",
]

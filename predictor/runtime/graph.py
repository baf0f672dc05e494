"""Rewrites of a loaded detection graph that compute the same outputs with less work.

Five rewrites, all applied when a checkpoint is loaded and none written
back to disk:

- `fold_into_convolutions`: graphs converted from TensorFlow pad with a
  separate ``Pad`` before each convolution and add its bias with a separate
  ``broadcast_add`` after it; both become the convolution's own ``pad`` and
  ``bias``, which also lets oneDNN fuse the activation that follows. On the
  shipped COCO model (34 convolutions, 28 such pads and 34 such biases) the
  forward pass takes 0.6 of the time, with equal outputs.
- `use_faster_operators`: MXNet's ``SwapAxis`` (20x slower than the
  ``transpose`` it means) and a -infinity ``Pad`` before a max pooling
  (which pads that way by itself) are replaced. With the fold above, the
  COCO model's forward pass takes 0.44-0.50 of the time it took.

- `fold_anchors`: GluonCV's SSD computes its anchor boxes on every forward
  pass: each feature map is multiplied by 0 only for ``slice_like`` to read
  its height and width from the product, which cuts a constant to size. For
  one input size the anchors never change, so they are computed once at load
  and enter the graph as one constant (7 % of the shipped digits SSD's
  forward pass went to those multiplications and slices).

- `fuse_for_cpu`: on the CPU, each convolution fused with its batch norm and
  activation by oneDNN.
- `merge_detection_head`: GluonCV's SSD head builds the candidate list for
  non-maximum suppression class by class: for each of the C classes it
  concatenates (class id, score, box) along the last axis, then concatenates
  the C blocks. That is C + 1 concatenations over every anchor, and MXNet's
  concatenation along a last axis of 1 to 6 values copies element by element.
  Yet the suppression (``box_nms`` with ``topk`` K, GluonCV's ``nms_topk``,
  400) only ever looks at the K best-scoring rows. The rewrite therefore
  picks those K rows by score (``topk``), puts them back in GluonCV's
  class-major order, and gathers their ids and boxes: the suppression sees
  the same K candidates in the same order. GluonCV's decoder first sets
  every score at or under 0.01, over all anchors and classes, to 0 (its
  class to -1); the selection is made on the softmax scores instead and only
  the K rows taken are thresholded: the same rows above the threshold are
  taken, and those under it the suppression ignores either way. The outputs
  are equal bit for bit (tests: the shipped float32 and int8 graphs; the
  ResNet-50 SSD 512 was checked by hand). On the shipped digits SSD (13
  classes x 11,636 anchors) this saves about a quarter of the forward pass
  (BENCHMARKS.md, "Forward cost"). The one case where the candidates can
  differ: the K-th and (K+1)-th best rows having exactly equal scores
  (``topk`` then need not take the earlier one, as the suppression's stable
  sort would); both rank K-th, far below any answer's threshold.
  Where K is not set, or not smaller than classes x anchors, the same values
  are laid out as (batch, 6, C * anchors) with one concatenation along axis
  1, where whole rows are copied, and one transpose (12 % of the first
  shipped SSD's float32 forward pass, 20 % of the int8 one).

The suppression is then spliced into the graph in place of the old one, and
whatever the graph computes from its output is kept node for node: GluonCV's
slicing, and in a checkpoint with a crop verifier
(`predictor.training.verifier`) the crops, convolutions and re-scoring,
float32 or quantized.

A graph that does not have the exact shape the rewrite expects is returned
unchanged.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import mxnet as mx

log = logging.getLogger(__name__)

_NMS_OP = "_contrib_box_nms"

# A node of MXNet's symbol JSON: {"op", "name", "attrs", "inputs": [[node, output, version]]}.
Node = dict[str, Any]


def fuse_for_cpu(symbol: mx.sym.Symbol, context: mx.Context) -> mx.sym.Symbol:
    """On the CPU, each convolution fused with its batch norm and activation (oneDNN).

    The same arithmetic in fewer passes over memory: 5 % faster on the shipped
    SSD, 12 % on the ResNet-50 SSD 512 (2-core AVX2 machine), outputs equal to
    float32 rounding. Quantized graphs are fused already; GPUs use cuDNN.
    """
    if context.device_type != "cpu" or not mx.runtime.Features().is_enabled("MKLDNN"):
        return symbol
    if any(node.attr("op_name") == "_sg_mkldnn_conv" for node in symbol.get_internals()):
        return symbol
    try:
        return symbol.get_backend_symbol("MKLDNN")
    except mx.base.MXNetError:  # pragma: no cover - an MXNet without the pass
        return symbol


_CONVOLUTION = "Convolution"
_BIAS_ADDS = ("broadcast_add", "elemwise_add", "broadcast_plus")


def fold_into_convolutions(
    symbol: mx.sym.Symbol, weights: dict[str, mx.nd.NDArray]
) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """Zero padding and per-channel bias additions taken into the convolutions they surround.

    Graphs converted from TensorFlow (`predictor.convert`) often pad with a
    separate ``Pad`` before a convolution that pads nothing, and add the bias
    with a separate ``broadcast_add`` of a (1, C, 1, 1) constant after one
    without a bias: two extra passes over every feature map, and a bias that
    oneDNN cannot fuse with the activation after it. Symmetric zero padding
    becomes the convolution's own ``pad``; the constant becomes its ``bias``
    (a new parameter, ``NAME_folded_bias``). A ``Pad`` that other nodes read
    too stays for them; a bias is folded only where nothing else reads the
    convolution's bias-free result. The arithmetic is the same, to float32
    rounding. Returns the very inputs when there is nothing to fold.
    """
    graph = json.loads(symbol.tojson())
    nodes: list[Node] = graph["nodes"]
    readers = _readers(nodes, graph["heads"])
    replaced: dict[int, tuple[int, int]] = {}  # a bias addition's index -> its convolution
    biases: dict[str, mx.nd.NDArray] = {}
    changed = False
    for index, node in enumerate(nodes):
        if node["op"] != _CONVOLUTION or node.get("attrs", {}).get("layout", "NCHW") != "NCHW":
            continue
        attrs = node["attrs"]
        padding = _symmetric_zero_padding(nodes[node["inputs"][0][0]], attrs)
        if padding is not None:
            node["inputs"][0] = nodes[node["inputs"][0][0]]["inputs"][0]
            attrs["pad"] = str(padding)
            changed = True
        bias = _bias_addition(nodes, readers, index, weights)
        if bias is not None:
            addition, constant = bias
            name = f"{node['name']}_folded_bias"
            biases[name] = constant.reshape((-1,))
            node["inputs"].append([len(nodes), 0, 0])
            nodes.append({"op": "null", "name": name, "inputs": []})
            attrs["no_bias"] = "False"
            replaced[addition] = (index, 0)
            changed = True
    if not changed:
        return symbol, weights
    weights = {**weights, **biases}
    for node in nodes:
        node["inputs"] = [
            [*replaced.get(source, (source, output)), version]
            for source, output, version in node["inputs"]
        ]
    graph["heads"] = [[*replaced.get(h[0], (h[0], h[1])), h[2]] for h in graph["heads"]]
    folded = reordered_symbol(graph)
    needed = set(folded.list_arguments()) | set(folded.list_auxiliary_states())
    return folded, {name: value for name, value in weights.items() if name in needed}


def use_faster_operators(symbol: mx.sym.Symbol, input_shape: tuple[int, ...]) -> mx.sym.Symbol:
    """The same graph with two slow operators of MXNet's CPU replaced by faster equivalents.

    - ``SwapAxis`` becomes ``transpose`` with the permutation it means: the
      same values, 20x faster on a (4, 128, 52, 52) map (converted bilinear
      resizes swap axes around each matrix product).
    - A ``Pad`` with -infinity before a max ``Pooling`` becomes the pooling's
      own ``pad`` (MXNet's max pooling never takes a padded position either).

    ``input_shape`` is one image's (the ranks come from MXNet's shape
    inference). Returns ``symbol`` itself when there is nothing to replace.
    """
    graph = json.loads(symbol.tojson())
    nodes: list[Node] = graph["nodes"]
    swaps = [index for index, node in enumerate(nodes) if node["op"] == "SwapAxis"]
    ranks = _input_ranks(symbol, nodes, swaps, input_shape) if swaps else {}
    changed = False
    for index, rank in ranks.items():
        attrs = nodes[index].get("attrs", {})
        axes = list(range(rank))
        first, second = int(attrs.get("dim1", 0)), int(attrs.get("dim2", 0))
        axes[first], axes[second] = axes[second], axes[first]
        nodes[index] = {**nodes[index], "op": "transpose", "attrs": {"axes": str(tuple(axes))}}
        changed = True
    for node in nodes:
        if node["op"] != "Pooling":
            continue
        padding = _max_pooling_padding(nodes[node["inputs"][0][0]], node.get("attrs", {}))
        if padding is not None:
            node["inputs"][0] = nodes[node["inputs"][0][0]]["inputs"][0]
            node["attrs"]["pad"] = str(padding)
            changed = True
    return reordered_symbol(graph) if changed else symbol


def _input_ranks(
    symbol: mx.sym.Symbol, nodes: list[Node], indices: list[int], input_shape: tuple[int, ...]
) -> dict[int, int]:
    """The rank of the first input of each of ``nodes[indices]``, where MXNet can infer it."""
    internals = symbol.get_internals()
    try:
        _, shapes, _ = internals.infer_shape_partial(data=(1, *input_shape))
    except mx.base.MXNetError:
        return {}
    names = internals.list_outputs()
    by_name = dict(zip(names, shapes or [], strict=False))
    ranks = {}
    for index in indices:
        source, output, _ = nodes[index]["inputs"][0]
        node = nodes[source]
        if node["op"] == "null":
            name = node["name"]
        else:
            outputs = [n for n in names if n.startswith(node["name"] + "_output")]
            name = outputs[output] if output < len(outputs) else ""
        shape = by_name.get(name)
        if shape:
            ranks[index] = len(shape)
    return ranks


def _max_pooling_padding(pad: Node, pool_attrs: dict[str, str]) -> tuple[int, int] | None:
    """The max pooling's ``pad`` with a -infinity ``Pad`` before it taken in; None if not."""
    widths = _constant_pad_widths(pad, float("-inf"))
    if widths is None:
        return None
    if pool_attrs.get("pool_type", "max") != "max" or attribute_flag(pool_attrs.get("global_pool")):
        return None
    if (
        pool_attrs.get("layout", "NCHW") != "NCHW"
        or len(attribute_ints(pool_attrs.get("kernel", ""))) != 2
    ):
        return None
    return _symmetric_spatial(widths, pool_attrs)


def _constant_pad_widths(pad: Node, fill: float) -> tuple[int, ...] | None:
    """A ``Pad`` node's ``pad_width`` when it pads with the constant ``fill``; None otherwise."""
    attrs = pad.get("attrs", {})
    if pad["op"] not in ("Pad", "pad") or attrs.get("mode", "constant") != "constant":
        return None
    if float(attrs.get("constant_value", "0")) != fill:
        return None
    return attribute_ints(attrs.get("pad_width", ""))


def attribute_flag(value: str | None) -> bool:
    """An MXNet boolean attribute's value."""
    return value in ("True", "true", "1")


def _readers(nodes: list[Node], heads: list[list[int]]) -> dict[int, list[int]]:
    """For each node, the nodes that read it (an output of the graph counts as -1)."""
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for source, _, _ in node["inputs"]:
            readers.setdefault(source, []).append(index)
    for source, _, _ in heads:
        readers.setdefault(source, []).append(-1)
    return readers


def _symmetric_zero_padding(pad: Node, conv_attrs: dict[str, str]) -> tuple[int, int] | None:
    """The convolution's ``pad`` with ``pad`` taken in; None if it cannot be.

    A ``Pad`` may be read by other nodes too: they keep reading it.
    """
    widths = _constant_pad_widths(pad, 0.0)
    if widths is None or len(attribute_ints(conv_attrs["kernel"])) != 2:
        return None
    return _symmetric_spatial(widths, conv_attrs)


def _symmetric_spatial(widths: tuple[int, ...], attrs: dict[str, str]) -> tuple[int, int] | None:
    """An operator's own 2-D ``pad`` plus a ``Pad``'s NCHW ``widths``, when those add to
    height and width only, the same before as after; None otherwise."""
    own = attribute_ints(attrs.get("pad", "(0, 0)")) or (0, 0)
    if len(widths) != 8 or any(widths[:4]) or len(own) != 2:
        return None
    top, bottom, left, right = widths[4:]
    if top != bottom or left != right:
        return None
    return (own[0] + top, own[1] + left)


def _bias_addition(
    nodes: list[Node], readers: dict[int, list[int]], index: int, weights: dict[str, mx.nd.NDArray]
) -> tuple[int, mx.nd.NDArray] | None:
    """(the addition's index, the constant) where a bias-free convolution's only reader adds
    a per-channel constant to it; None otherwise."""
    attrs = nodes[index]["attrs"]
    if not attribute_flag(attrs.get("no_bias")) or len(readers.get(index, [])) != 1:
        return None
    addition = readers[index][0]
    if addition < 0 or nodes[addition]["op"] not in _BIAS_ADDS:
        return None
    operands = [source for source, _, _ in nodes[addition]["inputs"]]
    others = [source for source in operands if source != index]
    if len(operands) != 2 or len(others) != 1 or nodes[others[0]]["op"] != "null":
        return None
    constant = weights.get(nodes[others[0]]["name"])
    channels = int(attrs["num_filter"])
    if constant is None or constant.size != channels:
        return None
    if constant.ndim > 1 and constant.shape[-3:] != (channels, 1, 1)[-constant.ndim :]:
        return None
    return addition, constant


def attribute_ints(text: str) -> tuple[int, ...]:
    """``"(1, 2)"`` as (1, 2); () for anything else."""
    try:
        return tuple(int(part) for part in text.strip("()[] ").split(",") if part.strip())
    except ValueError:
        return ()


def reordered_symbol(graph: dict[str, Any]) -> mx.sym.Symbol:
    """The symbol of an edited JSON graph: its nodes put back in an order where every node
    comes after its inputs, those no longer read left out.

    An edit can break the order MXNet's loader needs (a new parameter is
    appended after the convolution that reads it). MXNet recomputes the
    argument list and output offsets from the nodes, so they are dropped.
    """
    nodes: list[Node] = graph["nodes"]
    order: list[int] = []
    placed: set[int] = set()
    for head, _, _ in graph["heads"]:
        pending = [(head, False)]
        while pending:
            index, inputs_done = pending.pop()
            if index in placed:
                continue
            if inputs_done:
                placed.add(index)
                order.append(index)
                continue
            pending.append((index, True))
            pending.extend((source, False) for source, _, _ in reversed(nodes[index]["inputs"]))
    position = {old: new for new, old in enumerate(order)}
    reordered = [
        {**nodes[old], "inputs": [[position[s], o, v] for s, o, v in nodes[old]["inputs"]]}
        for old in order
    ]
    heads = [[position[s], o, v] for s, o, v in graph["heads"]]
    rebuilt = {"nodes": reordered, "arg_nodes": [], "heads": heads, "attrs": graph.get("attrs", {})}
    return mx.sym.load_json(json.dumps(rebuilt))


FOLDED_ANCHORS = "predictor_folded_anchors"
_DECODE_OP = "_contrib_box_decode"


def fold_anchors(
    symbol: mx.sym.Symbol, weights: dict[str, mx.nd.NDArray], input_shape: tuple[int, ...]
) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """The symbol with its box decoder's anchors as a constant, and the weights it needs.

    ``weights`` are the checkpoint's (arguments and auxiliary states by name);
    the returned ones hold the constant as `FOLDED_ANCHORS` and no longer the
    per-map constants it was cut from. ``input_shape`` is one image's. Both
    are returned unchanged when the anchors depend on the input's values, not
    only on its shape, or when the graph has no single box decoder.
    """
    graph = json.loads(symbol.tojson())
    nodes: list[Node] = graph["nodes"]
    decoders = [index for index, node in enumerate(nodes) if node["op"] == _DECODE_OP]
    if len(decoders) != 1 or len(nodes[decoders[0]]["inputs"]) != 2:
        return symbol, weights
    anchors_index, anchors_output, _ = nodes[decoders[0]]["inputs"][1]
    if anchors_output != 0 or nodes[anchors_index]["op"] == "null":
        return symbol, weights
    if not _depends_on_shape_only(nodes, anchors_index):
        return symbol, weights
    try:
        anchors = _evaluate(
            symbol.get_internals()[_output_name(nodes[anchors_index])], weights, input_shape
        )
    except (mx.base.MXNetError, KeyError, ValueError, AssertionError) as exc:
        log.debug("anchors left in the graph: %s", exc)
        return symbol, weights
    nodes[anchors_index] = {"op": "null", "name": FOLDED_ANCHORS, "inputs": []}
    folded = mx.sym.load_json(json.dumps(graph))
    needed = set(folded.list_arguments()) | set(folded.list_auxiliary_states())
    kept = {name: value for name, value in weights.items() if name in needed}
    kept[FOLDED_ANCHORS] = anchors
    return folded, kept


def _depends_on_shape_only(nodes: list[Node], index: int) -> bool:
    """True when ``nodes[index]`` reads the input image only for its shape.

    ``slice_like``'s second input lends only its shape; any other path from
    the ``data`` variable makes the value depend on the image.
    """
    pending, seen = [index], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        node = nodes[current]
        if node["op"] == "null":
            if node["name"] == "data":
                return False
            continue
        inputs = node["inputs"][:1] if node["op"] == "slice_like" else node["inputs"]
        pending.extend(entry[0] for entry in inputs)
    return True


def _evaluate(
    output: mx.sym.Symbol, weights: dict[str, mx.nd.NDArray], input_shape: tuple[int, ...]
) -> mx.nd.NDArray:
    """``output`` for one all-zero image, on the CPU (its value does not depend on the image)."""
    with warnings.catch_warnings():
        # Gluon warns that the "data" input has no type annotation; it is float32.
        warnings.simplefilter("ignore")
        block = mx.gluon.SymbolBlock(output, mx.sym.var("data"))
    block.collect_params().load_dict(
        weights, ctx=mx.cpu(), ignore_extra=True, cast_dtype=True, dtype_source="saved"
    )
    value = block(mx.nd.zeros((1, *input_shape), ctx=mx.cpu()))
    value.wait_to_read()  # errors in the pass surface here, inside fold_anchors' guard
    return value


def merge_detection_head(
    symbol: mx.sym.Symbol, input_shape: tuple[int, ...] | None = None
) -> mx.sym.Symbol:
    """The symbol with GluonCV's per-class candidates built in one step, only the best.

    ``input_shape`` (one image's, e.g. ``(3, 300, 300)``) tells how many
    candidates there are; without it every candidate is kept. Returns
    ``symbol`` itself when its head is not GluonCV's SSD head.
    """
    graph = json.loads(symbol.tojson())
    nodes: list[Node] = graph["nodes"]
    suppressions = [index for index, node in enumerate(nodes) if node["op"] == _NMS_OP]
    if len(suppressions) != 1:
        return symbol
    nms = suppressions[0]
    candidates = nodes[nms]["inputs"][0][0]
    sources = _per_class_sources(nodes, candidates)
    if sources is None:
        log.debug("detection head left as it is: not GluonCV's per-class layout")
        return symbol
    internals = symbol.get_internals()
    outputs = set(internals.list_outputs())
    names = [_output_name(nodes[index]) for index in sources]
    if not outputs.issuperset(names):  # a multi-output node names its outputs otherwise
        return symbol
    class_ids, scores, boxes = (internals[name] for name in names)
    classes = len(nodes[candidates]["inputs"])
    keep = int(nodes[nms].get("attrs", {}).get("topk", "-1"))
    thresholding = _per_class_thresholding(nodes, sources[0], sources[1], classes)
    selecting = 0 < keep < _candidate_count(scores, input_shape)
    if selecting and thresholding is not None:
        softmax_scores, threshold = thresholding
        merged = _best_thresholded_candidates(
            internals[_output_name(nodes[softmax_scores])], boxes, keep, threshold
        )
    elif selecting:
        merged = _best_candidates(class_ids, scores, boxes, keep)
    else:
        merged = _candidates(class_ids, scores, boxes, classes)
    if len(nodes[nms]["inputs"]) != 1:
        return symbol
    suppression = mx.sym.contrib.box_nms(merged, name=nodes[nms]["name"], **nodes[nms]["attrs"])
    spliced = _spliced(graph, nms, suppression)
    return symbol if spliced is None else spliced


def _per_class_sources(nodes: list[Node], candidates: int) -> tuple[int, int, int] | None:
    """(class ids, scores, boxes) node indices when ``candidates`` is GluonCV's layout.

    The layout: ``Concat(dim=1)`` of C blocks, block k being
    ``Concat(dim=-1)`` of ``slice_axis(ids, -1, k, k+1)``,
    ``slice_axis(scores, -1, k, k+1)`` and the decoded boxes.
    """
    outer = nodes[candidates]
    if outer["op"] != "Concat" or outer.get("attrs", {}).get("dim") != "1":
        return None
    sources: tuple[int, int, int] | None = None
    for position, (block_index, _, _) in enumerate(outer["inputs"]):
        block = nodes[block_index]
        if (
            block["op"] != "Concat"
            or block.get("attrs", {}).get("dim") != "-1"
            or len(block["inputs"]) != 3
        ):
            return None
        id_slice, score_slice, boxes = block["inputs"]
        sliced = [_sliced_source(nodes, entry[0], position) for entry in (id_slice, score_slice)]
        if sliced[0] is None or sliced[1] is None or boxes[1] != 0:
            return None
        found = (sliced[0], sliced[1], boxes[0])
        if sources is None:
            sources = found
        elif found != sources:
            return None
    return sources


def _sliced_source(nodes: list[Node], index: int, position: int) -> int | None:
    """The node sliced when ``nodes[index]`` is ``slice_axis(x, -1, position, position+1)``."""
    node = nodes[index]
    attrs = node.get("attrs", {})
    if node["op"] != "slice_axis" or attrs.get("axis") not in ("-1", "2"):
        return None
    if attrs.get("begin") != str(position) or attrs.get("end") != str(position + 1):
        return None
    source, output, _ = node["inputs"][0]
    return int(source) if output == 0 else None


def _output_name(node: Node) -> str:
    """The name `get_internals` gives a node's single output (inputs keep their own)."""
    return str(node["name"]) if node["op"] == "null" else f"{node['name']}_output"


def _candidates(
    class_ids: mx.sym.Symbol, scores: mx.sym.Symbol, boxes: mx.sym.Symbol, classes: int
) -> mx.sym.Symbol:
    """(batch, classes * anchors, 6) rows of (id, score, box), class-major as GluonCV's.

    ``class_ids`` and ``scores`` are (batch, anchors, classes), ``boxes`` is
    (batch, anchors, 4); built as (batch, 6, classes * anchors) then transposed.
    """
    ids_row = mx.sym.transpose(class_ids, axes=(0, 2, 1)).reshape((0, 1, -1))
    scores_row = mx.sym.transpose(scores, axes=(0, 2, 1)).reshape((0, 1, -1))
    per_class_boxes = mx.sym.broadcast_axis(
        mx.sym.expand_dims(mx.sym.transpose(boxes, axes=(0, 2, 1)), axis=2),
        axis=2,
        size=classes,
    )
    box_rows = per_class_boxes.reshape((0, 0, -1))
    planar = mx.sym.concat(ids_row, scores_row, box_rows, dim=1)
    return mx.sym.transpose(planar, axes=(0, 2, 1))


def _candidate_count(scores: mx.sym.Symbol, input_shape: tuple[int, ...] | None) -> int:
    """Anchors x classes for one image of ``input_shape``; 0 when it cannot be told."""
    if input_shape is None:
        return 0
    try:
        _, out_shapes, _ = scores.infer_shape_partial(data=(1, *input_shape))
    except mx.base.MXNetError:
        return 0
    if not out_shapes or not out_shapes[0] or 0 in out_shapes[0]:
        return 0
    _, anchors, classes = out_shapes[0]
    return int(anchors * classes)


class _TopRows:
    """The ``keep`` best-scoring (class, anchor) rows of (batch, anchors, classes) scores.

    Rows are numbered class-major, as GluonCV lists its candidates, and kept
    in that order: the suppression sorts by score stably, so among equal
    scores the earlier row (lower class, then lower anchor) must come first.
    """

    def __init__(self, scores: mx.sym.Symbol, keep: int) -> None:
        self.scores_by_class = mx.sym.transpose(scores, axes=(0, 2, 1)).reshape((0, -1))
        best = mx.sym.topk(self.scores_by_class, axis=1, k=keep, ret_typ="indices", dtype="int32")
        self.rows = mx.sym.sort(best, axis=1)
        images = mx.sym.contrib.index_array(self.rows, axes=(0,)).reshape((0, 0)).astype("int32")
        anchor_count = mx.sym.slice_axis(mx.sym.shape_array(scores), axis=0, begin=1, end=2)
        self.anchor_count = anchor_count.astype("int32")
        self.anchors = mx.sym.broadcast_mod(self.rows, self.anchor_count)
        self.at_row = mx.sym.stack(images, self.rows, axis=0)
        self.at_anchor = mx.sym.stack(images, self.anchors, axis=0)

    def classes(self) -> mx.sym.Symbol:
        """Each row's class index (int32)."""
        return mx.sym.broadcast_div(self.rows - self.anchors, self.anchor_count)


def _best_candidates(
    class_ids: mx.sym.Symbol, scores: mx.sym.Symbol, boxes: mx.sym.Symbol, keep: int
) -> mx.sym.Symbol:
    """(batch, keep, 6): the ``keep`` best-scoring rows of `_candidates`, in its order."""
    top = _TopRows(scores, keep)
    ids_by_class = mx.sym.transpose(class_ids, axes=(0, 2, 1)).reshape((0, -1))
    return mx.sym.concat(
        mx.sym.gather_nd(ids_by_class, top.at_row).expand_dims(-1),
        mx.sym.gather_nd(top.scores_by_class, top.at_row).expand_dims(-1),
        mx.sym.gather_nd(boxes, top.at_anchor),
        dim=-1,
    )


def _best_thresholded_candidates(
    softmax_scores: mx.sym.Symbol, boxes: mx.sym.Symbol, keep: int, threshold: float
) -> mx.sym.Symbol:
    """`_best_candidates` of GluonCV's thresholded ids and scores, thresholding only those rows.

    GluonCV's decoder sets every (anchor, class) score at or under
    ``threshold`` to 0 and its class id to -1; the suppression ignores such
    rows. Taking the best of the softmax scores before that finds the same
    rows above the threshold, so the threshold need only be applied to the
    ``keep`` rows taken, not to every anchor and class.
    """
    top = _TopRows(softmax_scores, keep)
    taken = mx.sym.gather_nd(top.scores_by_class, top.at_row)
    above = taken > threshold
    class_ids = mx.sym.where(above, top.classes().astype("float32"), mx.sym.ones_like(taken) * -1)
    scores = mx.sym.where(above, taken, mx.sym.zeros_like(taken))
    return mx.sym.concat(
        class_ids.expand_dims(-1),
        scores.expand_dims(-1),
        mx.sym.gather_nd(boxes, top.at_anchor),
        dim=-1,
    )


def _per_class_thresholding(
    nodes: list[Node], class_ids: int, scores: int, classes: int
) -> tuple[int, float] | None:
    """(softmax scores node, threshold) when ids and scores are GluonCV's
    ``MultiPerClassDecoder`` outputs over ``classes`` classes, else None.

    Its layout: ``mask = scores > threshold``;
    ``scores = where(mask, scores, zeros_like(scores))``;
    ``ids = where(mask, broadcast_add(zeros_like(x), reshape(arange(classes))), -ones)``.
    """
    id_node, score_node = nodes[class_ids], nodes[scores]
    if id_node["op"] != "where" or score_node["op"] != "where":
        return None
    (mask, _, _), (index_table, _, _), (fallback_id, _, _) = id_node["inputs"]
    (score_mask, _, _), (kept, _, _), (zeros, _, _) = score_node["inputs"]
    mask_node = nodes[mask]
    if score_mask != mask or mask_node["op"] != "_greater_scalar":
        return None
    if mask_node["inputs"][0][0] != kept or _op_of(nodes, zeros) != ("zeros_like", kept):
        return None
    fallback = nodes[fallback_id]
    if fallback["op"] != "_mul_scalar" or float(fallback["attrs"]["scalar"]) != -1.0:
        return None
    if _op_of(nodes, fallback["inputs"][0][0]) != ("ones_like", index_table):
        return None
    if not _is_class_index_table(nodes, index_table, classes):
        return None
    return kept, float(mask_node["attrs"]["scalar"])


def _op_of(nodes: list[Node], index: int) -> tuple[str, int | None]:
    """(operator, its first input's node) of ``nodes[index]``."""
    node = nodes[index]
    return node["op"], (node["inputs"][0][0] if node["inputs"] else None)


def _is_class_index_table(nodes: list[Node], index: int, classes: int) -> bool:
    """True when ``nodes[index]`` is 0 + (0, 1, ..., classes - 1) along the last axis."""
    node = nodes[index]
    if node["op"] != "broadcast_add" or len(node["inputs"]) != 2:
        return False
    zeros, table = (entry[0] for entry in node["inputs"])
    if nodes[zeros]["op"] != "zeros_like" or nodes[table]["op"] != "Reshape":
        return False
    shape = nodes[table]["attrs"].get("shape", "")
    arange = nodes[nodes[table]["inputs"][0][0]]
    attrs = arange.get("attrs", {})
    # arange(classes): MXNet's start with no stop is the stop, counting from 0.
    counts_classes = (attrs.get("start"), attrs.get("stop")) in (
        (str(classes), "None"),
        ("0", str(classes)),
        ("0.0", str(float(classes))),
    )
    return (
        arange["op"] == "_arange"
        and counts_classes
        and attrs.get("step", "1.0") in ("1", "1.0")
        and attrs.get("repeat", "1") == "1"
        and shape.replace(" ", "") == f"(1,1,{classes})"
    )


def _spliced(
    graph: dict[str, Any], replaced: int, replacement: mx.sym.Symbol
) -> mx.sym.Symbol | None:
    """``graph`` with node ``replaced`` computed by ``replacement``, everything after it kept.

    ``replacement`` was built on the graph's own internals and bears the replaced
    node's name. Its JSON comes first; then every node of ``graph`` that it
    does not hold follows in order, reading the new nodes where it read old
    ones of the same name. The nodes after the replaced one are copied as they
    are, whatever their operator: GluonCV's slices, a verifier's convolutions
    (`predictor.training.verifier`), oneDNN's fused and quantized ones. Nodes
    only the old computation used are dropped when the JSON is loaded. None
    when names are ambiguous (a name of the replacement is a different node).
    """
    nodes: list[Node] = graph["nodes"]
    spliced: list[Node] = json.loads(replacement.tojson())["nodes"]
    index_of = {node["name"]: index for index, node in enumerate(spliced)}
    after = _depending_on(nodes, replaced)
    if len(index_of) != len(spliced) or any(nodes[i]["name"] in index_of for i in after):
        return None
    moved: dict[int, int] = {}
    for index, node in enumerate(nodes):
        if node["name"] in index_of and index not in after:
            same = spliced[index_of[node["name"]]]
            if same["op"] != node["op"]:
                return None
            moved[index] = index_of[node["name"]]
            continue
        copy = dict(node)
        copy["inputs"] = [[moved[source], *rest] for source, *rest in node["inputs"]]
        moved[index] = len(spliced)
        spliced.append(copy)
    result = {
        "nodes": spliced,
        "arg_nodes": [index for index, node in enumerate(spliced) if node["op"] == "null"],
        "heads": [[moved[source], *rest] for source, *rest in graph["heads"]],
        "attrs": graph.get("attrs", {}),
    }
    return mx.sym.load_json(json.dumps(result))


def after_suppression(symbol: mx.sym.Symbol) -> list[str]:
    """Names of the suppression and of every operator computed from its output, in order.

    GluonCV's slicing of the detections, and a crop verifier's crops,
    convolutions and re-scoring (`predictor.training.verifier`); empty when the
    graph has no single suppression.
    """
    nodes: list[Node] = json.loads(symbol.tojson())["nodes"]
    suppressions = [index for index, node in enumerate(nodes) if node["op"] == _NMS_OP]
    if len(suppressions) != 1:
        return []
    found = {suppressions[0]} | _depending_on(nodes, suppressions[0])
    return [nodes[index]["name"] for index in sorted(found) if nodes[index]["op"] != "null"]


def _depending_on(nodes: list[Node], start: int) -> set[int]:
    """Indices of the nodes that read ``start``'s output, directly or not."""
    found: set[int] = set()
    for index in range(start + 1, len(nodes)):
        if any(source == start or source in found for source, *_ in nodes[index]["inputs"]):
            found.add(index)
    return found

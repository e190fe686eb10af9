"""Layer specs and blocks -> a graph of nodes: which Keras layer each is and which nodes feed it.

Pure (no Keras): the config's validation runs it, so an unknown input name, a layer that takes a later
one, a merge with one input or a block parameter that does not exist is one ConfigError naming its
key path before anything is built. `models.build_model` builds the nodes in order.

- A layer may say `name: x` (Keras' own argument, so the summary shows it) and `inputs: x` or
  `inputs: [x, y]` (names of earlier layers; default: the layer before). The name `input` is the
  model's input (inside a block: the block's input). Merge layers (`add`, `concatenate`, ...) take
  two or more inputs; the last layer is the model's output, and every other layer must feed one.
- `model.blocks: {residual: {params: {filters: 16}, layers: [...]}}` defines a block; `- residual:
  {filters: 32}` uses it in place of a layer. A string `$filters` inside the block's layers is the
  parameter's value (its type kept). A use may also say `name`, `inputs` and `trainable` (set on every
  layer inside). Blocks may use other blocks. The layers of a use are named `<use>_<layer>`, where
  <use> is the use's name or `<block>_<n>` (its n-th use), so the Keras summary shows the expansion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, format_path
from .layers import check_layer_spec, is_merge, layer_arguments, resolve_type
from .registry import did_you_mean

MODEL_INPUT = -1          # a node index: the model's input
INPUT_NAME = "input"      # the name that refers to it (in a block: the block's input)
USE_KEYS = ("name", "inputs", "trainable")  # a block use's own keys, beside its parameters
MAX_DEPTH = 16            # blocks inside blocks; deeper is a cycle (a block that uses itself)


@dataclass(frozen=True)
class Node:
    """One Keras layer of the model: what to build and from which earlier nodes."""

    type: str                  # the layer type as written (a registry name, alias or Keras class)
    args: Any                  # its arguments as layers.build_layer takes them (no `inputs`)
    inputs: tuple[int, ...]    # indexes of the nodes it is called on (MODEL_INPUT: the model's input)
    path: tuple                # where errors point: model.layers[i] (a block's use, for its layers)
    within: str | None = None  # inside a block: that layer's own key path, for the message


def is_chain(nodes: list[Node]) -> bool:
    """Every node takes the one before it: a keras.Sequential stack, as every config without a graph."""
    return all(n.inputs == (i - 1 if i else MODEL_INPUT,) and not is_merge(n.type) for i, n in enumerate(nodes))


def plan_nodes(layers: list, blocks: dict | None = None) -> list[Node]:
    """The model's nodes in build order; a mistake raises ConfigError naming its key path."""
    blocks = blocks or {}
    for name in blocks:
        _check_block_name(name)
    nodes: list[Node] = []
    _expand(layers, blocks, nodes, scope_input=MODEL_INPUT, paths=lambda i: ("model", "layers", i),
            use=None, prefix="", trainable=None, uses={}, depth=0)
    _check_every_node_feeds_another(nodes)
    _check_keras_names_unique(nodes)
    return nodes


def keras_name(node: Node) -> str | None:
    """The Keras layer name a node asks for, if any."""
    return node.args.get("name") if isinstance(node.args, dict) and not _is_application(node.type) else None


# --- expansion ------------------------------------------------------------------------------------


def _expand(specs, blocks, nodes, *, scope_input, paths, use, prefix, trainable, uses, depth) -> int:
    """Append the nodes of `specs` (a model's or a block's layers); return the last one's index.

    `paths(i)`: the key path of specs[i] in the config, which errors about the spec itself name;
    `use`: None at the top level, else the key path of the block's use in model.layers, which a
    Keras error at build time names (it depends on the use's parameters)."""
    declared = _declared_names(specs, paths)
    names = {INPUT_NAME: scope_input}
    previous = scope_input
    for i, spec in enumerate(specs):
        path = paths(i)
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in blocks):
            _check_layer(spec, i, path, blocks)
        (kind, args), = spec.items()
        where = (*path, kind)
        own = _declared_name(kind, args)
        args = dict(args) if isinstance(args, dict) else args
        raw_inputs = args.pop("inputs", None) if isinstance(args, dict) else None
        inputs = _resolve_inputs(raw_inputs, names, declared, previous, (*where, "inputs"), paths)
        if kind in blocks:
            index = _expand_use(kind, args, inputs, blocks, nodes, where=where, at=use or where,
                                prefix=prefix, trainable=trainable, uses=uses, depth=depth)
        else:
            merge = is_merge(kind)
            if merge and len(inputs) < 2:
                raise ConfigError(f"'{kind}' merges several inputs: give `inputs: [a, b]` (names of earlier "
                                  f"layers), found {len(inputs)}", path=(*where, "inputs"))
            if not merge and len(inputs) != 1:
                raise ConfigError(f"'{kind}' takes one input, found {len(inputs)}: only merge layers (add, "
                                  "concatenate, ...) take several", path=(*where, "inputs"))
            if use is not None or trainable is not None:
                args = _inner_args(kind, args, prefix, i, trainable)
            within = format_path(where) if use is not None else None
            nodes.append(Node(kind, args, tuple(inputs), tuple(use or where), within))
            index = len(nodes) - 1
        if own is not None:
            names[own] = index
        previous = index
    return previous


def _check_layer(spec, index: int, path: tuple, blocks: dict) -> None:
    try:
        check_layer_spec(spec, index, path=path)
    except ConfigError as exc:
        kind = next(iter(spec)) if isinstance(spec, dict) and len(spec) == 1 else None
        if not blocks or not isinstance(kind, str) or not exc.message.startswith("unknown layer type"):
            raise
        hint = did_you_mean(kind, blocks)
        message = (f"unknown layer type or block '{kind}'{hint.replace('mean', 'mean block')}" if hint
                   else f"{exc.message}; blocks: {', '.join(blocks)}")
        raise ConfigError(message, path=exc.path) from None


def _expand_use(block_name, args, inputs, blocks, nodes, *, where, at, prefix, trainable, uses, depth) -> int:
    """The nodes of one use of a block; returns its last node (the use's output)."""
    if depth >= MAX_DEPTH:
        raise ConfigError(f"blocks nest more than {MAX_DEPTH} deep: block '{block_name}' uses itself "
                          "(directly or through another block)", path=where)
    block = blocks[block_name]
    if not isinstance(args, (dict, type(None))):
        raise ConfigError(f"a block's use takes a mapping of its parameters, like {{filters: 32}}; found {args!r}",
                          path=where)
    given = dict(args or {})
    if len(inputs) != 1:
        raise ConfigError(f"a block takes one input, found {len(inputs)}", path=(*where, "inputs"))
    name = given.pop("name", None)
    use_trainable = given.pop("trainable", None)
    if use_trainable is not None and not isinstance(use_trainable, bool):
        raise ConfigError(f"must be true or false, found {use_trainable!r}", path=(*where, "trainable"))
    params = dict(_params(block))
    for key, value in given.items():
        if key not in params:
            listing = ", ".join(params) or "none"
            raise ConfigError(f"block '{block_name}' has no parameter '{key}'{did_you_mean(key, params)} "
                              f"(parameters: {listing}; a use also takes {', '.join(USE_KEYS)})", path=(*where, key))
        params[key] = value
    uses[block_name] = uses.get(block_name, 0) + 1
    instance = f"{prefix}{name if name is not None else f'{block_name}_{uses[block_name]}'}_"
    definition = ("model", "blocks", block_name, "layers")
    body = [_substitute(spec, params, (*definition, j), block_name) for j, spec in enumerate(_layers(block))]
    return _expand(body, blocks, nodes, scope_input=inputs[0], paths=lambda j: (*definition, j), use=at,
                   prefix=instance, trainable=use_trainable if use_trainable is not None else trainable,
                   uses=uses, depth=depth + 1)


def _substitute(node, params: dict, path: tuple, block_name: str):
    """The block's layer spec with every `$param` string replaced by the parameter's value."""
    if isinstance(node, str) and node.startswith("$"):
        key = node[1:]
        if key not in params:
            raise ConfigError(f"'{node}' is not a parameter of block '{block_name}'{did_you_mean(key, params)} "
                              f"(parameters: {', '.join(params) or 'none'})", path=path)
        return params[key]
    if isinstance(node, dict):
        return {k: _substitute(v, params, (*path, k), block_name) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, params, (*path, j), block_name) for j, v in enumerate(node)]
    return node


def _inner_args(kind: str, args, prefix: str, index: int, trainable) -> Any:
    """A layer's arguments inside a block: named after its use, and frozen when the use is."""
    canonical, _, kwargs = layer_arguments(kind, args)
    if trainable is not None:
        kwargs["trainable"] = trainable
    if prefix and not _is_application(kind):
        own = kwargs.get("name")
        kwargs["name"] = f"{prefix}{own if own is not None else f'{canonical.lower()}_{index}'}"
    return kwargs


# --- names and inputs ---------------------------------------------------------------------------


def _declared_name(kind, args) -> str | None:
    """The graph name a spec declares (an application's `name` is the Keras model it builds)."""
    return args.get("name") if isinstance(args, dict) and not _is_application(kind) else None


def _declared_names(specs, paths) -> dict:
    """name -> index of every named spec of one scope; a repeated or reserved name is an error."""
    declared: dict = {}
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or len(spec) != 1:
            check_layer_spec(spec, i, path=paths(i))
        (kind, args), = spec.items()
        name = _declared_name(kind, args)
        if name is None:
            continue
        where = (*paths(i), kind, "name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a layer's name is a non-empty string, found {name!r}", path=where)
        if name == INPUT_NAME:
            raise ConfigError(f"'{INPUT_NAME}' names the model's input (in a block, the block's input); "
                              "choose another name", path=where)
        if name in declared:
            raise ConfigError(f"'{name}' already names {format_path(paths(declared[name]))}; "
                              "each layer's name must be unique", path=where)
        declared[name] = i
    return declared


def _resolve_inputs(raw, names, declared, previous, path, paths) -> list[int]:
    if raw is None:
        return [previous]
    listed = [raw] if isinstance(raw, str) else raw
    if not isinstance(listed, list) or not listed or not all(isinstance(n, str) for n in listed):
        raise ConfigError(f"expected a layer name or a list of names, found {raw!r}", path=path)
    out = []
    for k, name in enumerate(listed):
        at = path if isinstance(raw, str) else (*path, k)
        if name in names:
            out.append(names[name])
        elif name in declared:
            raise ConfigError(f"'{name}' is not an earlier layer (it is {format_path(paths(declared[name]))}): a "
                              "layer takes only earlier layers as inputs (a graph has no cycles)", path=at)
        else:
            known = list(names)
            raise ConfigError(f"no earlier layer is named '{name}'{did_you_mean(name, known)} "
                              f"(earlier names: {', '.join(known)})", path=at)
    return out


def _check_every_node_feeds_another(nodes: list[Node]) -> None:
    # Keras drops a layer whose output reaches no output without a word: a forgotten skip connection.
    fed = {i for n in nodes for i in n.inputs}
    for i, node in enumerate(nodes[:-1]):
        if i not in fed:
            inner = f"{node.within}: " if node.within else ""
            raise ConfigError(f"{inner}this layer's output goes nowhere: no later layer takes it as input, and only "
                              "the last layer is the model's output", path=node.path)


def _check_keras_names_unique(nodes: list[Node]) -> None:
    # A block use's generated names (residual_2_...) could meet a name the user gave.
    seen: dict = {}
    for node in nodes:
        name = keras_name(node)
        if name is None:
            continue
        if name in seen:
            inner = f"{node.within}: " if node.within else ""
            raise ConfigError(f"{inner}the layer name '{name}' is taken by {format_path(seen[name])}; Keras "
                              "needs each layer's name once (rename the layer or the block's use)", path=node.path)
        seen[name] = node.path


# --- blocks ---------------------------------------------------------------------------------------


def _params(block) -> dict:
    return dict(block.params if hasattr(block, "params") else block.get("params") or {})


def _layers(block) -> list:
    return list(block.layers if hasattr(block, "layers") else block.get("layers") or [])


def _check_block_name(name: str) -> None:
    path = ("model", "blocks", name)
    try:
        resolve_type(name)
    except ConfigError:
        if name.isidentifier() and name[:1].islower():
            return
        raise ConfigError(f"a block's name is a lowercase identifier like 'residual', found {name!r}", path=path) from None
    raise ConfigError(f"'{name}' is a layer type; give the block another name", path=path)


def _is_application(kind: str) -> bool:
    try:
        _, layer_kind = resolve_type(kind)
    except ConfigError:
        return False
    return layer_kind is not None and layer_kind.keras_class == "application"

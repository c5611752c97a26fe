"""CGNet's top-level parts in forward order: the one table the network's neighbours read.

The model registers exactly these attributes (a test checks it); the weight formats name each part's
module in the authors' code, mmsegmentation and sssegmentation from here; the summary groups them into
the rows of the paper's figure; the folded inference network folds each by its kind. Adding or
renaming a part is one row here, and every reader follows or fails a test instead of drifting.

(``layout`` already means a checkpoint's or a dataset's layout in this package, hence ``parts``.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

Kind = Literal["stem", "injection", "join", "cg_down", "cg_blocks", "dropout", "classifier"]
"""What a part is: the stage-1 ConvBNAct list, an input injection (average-pooled image), a join
(BatchNorm + PReLU after a concatenation), a CG-Down block, a list of CG blocks, the Dropout2d before
the head (an Identity when off), or the 1x1 classifier conv."""

KINDS: tuple[Kind, ...] = get_args(Kind)
LIST_KINDS: frozenset[Kind] = frozenset({"stem", "cg_blocks"})
"""Parts that are module lists: their keys carry the element's index after the part's name."""
WEIGHTLESS_KINDS: frozenset[Kind] = frozenset({"injection", "dropout"})
"""Parts without parameters or buffers: no checkpoint names them."""

ForeignFormat = Literal["official", "mmseg", "sssegmentation"]
_FIELD = re.compile(r"\{(k|head)(?:\+(\d+))?\}")  # {k}, {k+1}, {head} in a foreign name
_SSSEG_ROOTS = (("backbone.", "backbone_net."), ("decode_head.conv_seg", "decoder.1"))


@dataclass(frozen=True)
class Part:
    """One top-level attribute of :class:`~cgnet.models.CGNet`.

    ``official`` and ``mmseg`` (and, derived from it, ``sssegmentation``) name the module holding the
    part's weights in that layout (None for weightless parts). In a list part's name ``{k}`` stands
    for the element's index in our list and ``{k+1}`` for one more (mmseg counts the stage's CG-Down
    block as element 0); the official head's ``{head}`` is its index in the authors' ``classifier``
    Sequential (1 when a Dropout2d precedes it). Names inside a part depend on its kind only (see
    ``cgnet.models.weights``).
    """

    name: str
    kind: Kind
    row: str  # the summary row it counts towards
    official: str | None = None
    mmseg: str | None = None

    @property
    def sssegmentation(self) -> str | None:
        """sssegmentation keeps mmseg's backbone names under another root, and its head is the conv
        of a (Dropout2d, conv) ``decoder``: a renaming of whole layouts, not of parts."""
        if self.mmseg is None:
            return None
        for mm, ss in _SSSEG_ROOTS:
            if self.mmseg.startswith(mm):
                return ss + self.mmseg[len(mm) :]
        raise KeyError(f"no sssegmentation root for mmseg's {self.mmseg!r}")

    @property
    def is_list(self) -> bool:
        return self.kind in LIST_KINDS

    @property
    def has_weights(self) -> bool:
        return self.kind not in WEIGHTLESS_KINDS

    def foreign(self, fmt: ForeignFormat, k: int | None = None, head: int = 0) -> str:
        """The module name of this part (element ``k`` of a list part) in a foreign layout."""
        template = getattr(self, fmt)
        if template is None:
            raise KeyError(f"part {self.name!r} has no weights, so no {fmt} name")
        if self.is_list and k is None:
            raise KeyError(f"part {self.name!r} is a list: name one element")
        fields = {"k": k if k is not None else 0, "head": head}
        return _FIELD.sub(lambda m: str(fields[m[1]] + int(m[2] or 0)), template)


_STEM = "stem"
_JOIN1 = "injection 1 + join 1"
_STAGE2 = "stage 2 (CG-Down + blocks)"
_JOIN2 = "injection 2 + join 2"
_STAGE3 = "stage 3 (CG-Down + blocks)"
_JOIN3 = "join 3"
_HEAD = "classifier"

# CGNet's parts in the order its forward pass uses them (and the order the model registers them).
# fmt: off
PARTS: tuple[Part, ...] = (
    #    name            kind         row      official                  mmseg
    Part("stem",         "stem",      _STEM,   "level1_{k}",             "backbone.stem.{k}"),
    Part("injection_2x", "injection", _JOIN1),
    Part("join1",        "join",      _JOIN1,  "b1",                     "backbone.norm_prelu_0"),
    Part("stage2_down",  "cg_down",   _STAGE2, "level2_0",               "backbone.level1.0"),
    Part("stage2",       "cg_blocks", _STAGE2, "level2.{k}",             "backbone.level1.{k+1}"),
    Part("injection_4x", "injection", _JOIN2),
    Part("join2",        "join",      _JOIN2,  "bn_prelu_2",             "backbone.norm_prelu_1"),
    Part("stage3_down",  "cg_down",   _STAGE3, "level3_0",               "backbone.level2.0"),
    Part("stage3",       "cg_blocks", _STAGE3, "level3.{k}",             "backbone.level2.{k+1}"),
    Part("join3",        "join",      _JOIN3,  "bn_prelu_3",             "backbone.norm_prelu_2"),
    Part("dropout",      "dropout",   _HEAD),
    Part("classifier",   "classifier", _HEAD,  "classifier.{head}.conv", "decode_head.conv_seg"),
)
# fmt: on

PART_NAMES: tuple[str, ...] = tuple(p.name for p in PARTS)
_BY_NAME: dict[str, Part] = {p.name: p for p in PARTS}


def _rows() -> dict[str, tuple[str, ...]]:
    rows: dict[str, tuple[str, ...]] = {}
    for p in PARTS:
        rows[p.row] = (*rows.get(p.row, ()), p.name)
    return rows


SUMMARY_ROWS: dict[str, tuple[str, ...]] = _rows()
"""Summary row -> its parts, grouped as the paper's figure draws the network, in forward order."""


def split_key(key: str) -> tuple[Part, int | None, str]:
    """One of our parameter or buffer names as (part, element index of a list part, rest).

    ``'stage2.1.f_loc.weight'`` -> (stage2, 1, ``'f_loc.weight'``); ``'join1.bn.bias'`` -> (join1,
    None, ``'bn.bias'``). Raises KeyError for a name that no part of CGNet holds.
    """
    head, _, rest = key.partition(".")
    found = _BY_NAME.get(head)
    k: int | None = None
    if found is not None and found.is_list:
        index, _, rest = rest.partition(".")
        k = int(index) if index.isascii() and index.isdigit() else None
        if k is None:
            found = None
    if found is None or not rest:
        raise KeyError(f"{key!r} is not a parameter name of CGNet's parts")
    return found, k, rest


def foreign_pattern(fmt: ForeignFormat) -> re.Pattern[str]:
    """Matches the start of every key a layout's parts hold (any depth, any head index)."""
    alternatives = [_template_regex(getattr(p, fmt)) for p in PARTS if p.has_weights]
    return re.compile(rf"^(?:{'|'.join(alternatives)})\.")


def _template_regex(template: str) -> str:
    """A foreign name with its fields as digit runs and everything else literal."""
    pieces: list[str] = []
    end = 0
    for m in _FIELD.finditer(template):
        pieces += [re.escape(template[end : m.start()]), r"\d+"]
        end = m.end()
    return "".join([*pieces, re.escape(template[end:])])

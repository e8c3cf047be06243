"""How each run's preset was chosen and which of its family's menu options it used: two lines of
the report's protocol.

Both are read from the run's own resolved config, so they describe what that run trained with:
a tuned preset (``conf/family_settings/<family>/tuned.yaml``, written by ``scripts/tune_presets.py``)
carries a top-level ``preset`` block with its search's trials, budget and objective; a run without
one was set by hand. The menu is the family's ``FamilySpec.menu`` (dotted keys and labels), so this
module names no family.
"""

from __future__ import annotations

from typing import Any

from genbench.registry import find_family

#: what the report says of a run whose config carries no ``preset`` block
BY_HAND = "set by hand"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.3g}"


def preset_text(config: dict[str, Any]) -> str:
    """How the preset of a run with resolved ``config`` was chosen: the search behind a tuned preset
    (method, trials, budget, objective and split, best value, the hand-set preset's value as one of
    the trials, the record file), else "set by hand"."""
    preset = config.get("preset")
    if not isinstance(preset, dict) or not preset.get("method"):
        return BY_HAND
    trials = preset.get("trials")
    complete = preset.get("complete")
    parts = [str(preset["method"])]
    if trials is not None:
        parts.append(f"{trials} trials" + (f" ({complete} complete)" if complete not in (None, trials) else ""))
    if preset.get("budget"):
        images = preset.get("budget_images")
        parts.append(f"budget {preset['budget']}" + (f" ({_number(images)} training images)" if images else ""))
    if preset.get("objective"):
        samples = preset.get("samples")
        objective = f"objective {preset['objective']}" + (f" of {_number(samples)} samples" if samples else "")
        parts.append(objective + (f" against the {preset['split']} split" if preset.get("split") else ""))
    if isinstance(preset.get("best_value"), int | float):
        parts.append(f"best {_number(preset['best_value'])}")
    if isinstance(preset.get("hand_set_value"), int | float):
        parts.append(f"hand-set preset {_number(preset['hand_set_value'])}")
    check = preset.get("check")
    if isinstance(check, dict) and check.get("finalists"):
        parts.append(check_text(check))
    if preset.get("record"):
        parts.append(f"record {preset['record']}")
    return ", ".join(parts)


def check_text(check: dict[str, Any]) -> str:
    """The time check of a tuned preset: the finalists' values when trained again under the check's
    budget, and which one became the preset."""
    seconds = check.get("seconds")
    budget = f"budget {check.get('budget')}" + (f" ({_number(seconds)} s)" if seconds else "")
    values = []
    chosen = "?"
    for finalist in check["finalists"]:
        name = "hand-set" if finalist.get("hand_set") else f"trial {finalist.get('trial')}"
        value = finalist.get("value")
        values.append(f"{name} {_number(value) if isinstance(value, int | float) else 'failed'}")
        if finalist.get("trial") == check.get("chosen"):
            chosen = "the hand-set preset" if finalist.get("hand_set") else name
    return f"finalists under {budget}: {' vs '.join(values)}, chosen {chosen}"


def _select(config: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _option(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "" or value == []:
        return "off"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str) and value.count(".") >= 2 and " " not in value:  # a class path: its name
        return value.rsplit(".", 1)[-1]
    return str(value)


def menu_text(family: str, config: dict[str, Any]) -> str:
    """``label value`` of each menu option (``FamilySpec.menu``) of ``family`` that the resolved
    ``config`` sets; booleans and empty values read on/off, class paths by their class name."""
    spec = find_family(family)
    if spec is None or not spec.menu:
        return "no menu declared"
    shown = []
    for key, label in spec.menu:
        found, value = _select(config, key)
        if found:
            shown.append(f"{label} {_option(value)}")
    return ", ".join(shown) or "–"

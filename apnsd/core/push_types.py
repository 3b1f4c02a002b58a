"""Apple's push types: the topic suffix each needs, and the type of a job that names none."""

from __future__ import annotations

import msgspec

# Each push type's apns-topic is the bundle id plus this suffix (Apple, "Sending notification requests to APNs").
PUSH_TYPE_SUFFIXES: dict[str, str] = {
    "alert": "",
    "background": "",
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "mdm": "",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
    "widgets": ".push-type.widgets",
    "controls": ".push-type.controls",
}
_BY_SUFFIX = tuple((suffix, push_type) for push_type, suffix in PUSH_TYPE_SUFFIXES.items() if suffix)
MDM_TOPIC_PREFIX = "com.apple.mgmt."  # MDM topics are the push certificate's UID, never a bundle id
_SILENT_KEY = b"content-available"
_plain = msgspec.json.Decoder()


def infer_push_type(topic: str | None, payload: bytes) -> str:
    """The push type of a job that gives none: its topic's suffix, else background for a silent payload, else alert."""
    if topic is not None:
        for suffix, push_type in _BY_SUFFIX:
            if topic.endswith(suffix):
                return push_type
        if topic.startswith(MDM_TOPIC_PREFIX):
            return "mdm"
    # A substring test keeps ordinary alerts at one C-speed scan; only possible silent pushes are decoded.
    if _SILENT_KEY in payload and is_silent(payload):
        return "background"
    return "alert"


def is_silent(payload: bytes) -> bool:
    """True when the payload's ``aps`` holds only ``content-available`` (a background update)."""
    try:
        obj = _plain.decode(payload)
    except msgspec.DecodeError:
        return False
    aps = obj.get("aps") if isinstance(obj, dict) else None
    return isinstance(aps, dict) and list(aps) == ["content-available"]


def topic_problem(topic: str, push_type: str) -> str | None:
    """Why an explicit topic cannot carry this push type (it lacks the type's suffix), or None."""
    suffix = PUSH_TYPE_SUFFIXES.get(push_type, "")
    if suffix and not topic.endswith(suffix):
        return f"push_type {push_type!r} needs a topic ending in {suffix!r} (the bundle id + {suffix!r}), got {topic!r}"
    return None


def topic_for(bundle_topic: str | None, push_type: str | None) -> str | None:
    """The apns-topic for a job without a topic: the app's topic plus its push type's suffix."""
    if bundle_topic is None or push_type is None:
        return bundle_topic
    suffix = PUSH_TYPE_SUFFIXES.get(push_type, "")
    return bundle_topic + suffix if suffix and not bundle_topic.endswith(suffix) else bundle_topic

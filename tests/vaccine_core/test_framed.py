"""The written minimal pairs: every activity asked for both ways, each request whole."""

from vaccine_core.moderation.framed import ACTIVITIES, BENIGN_FRAMES, HARMFUL_FRAMES, framed_requests


def test_every_activity_is_asked_for_in_every_frame_and_labelled_by_the_frame():
    pairs = framed_requests()
    assert len(pairs) == len(ACTIVITIES) * (len(HARMFUL_FRAMES) + len(BENIGN_FRAMES))
    assert len({text for text, _ in pairs}) == len(pairs)
    for activity in ACTIVITIES:
        labels = [harmful for text, harmful in pairs if activity in text]
        assert labels.count(True) == len(HARMFUL_FRAMES) and labels.count(False) == len(BENIGN_FRAMES)
    assert not any("{" in text or "}" in text for text, _ in pairs)

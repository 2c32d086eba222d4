"""Faces followed across the frames of one stream: ids, smoothed expressions, summaries.

Pure Python on plain boxes and probability lists, so it works for any model
that returns boxes and imports nothing of emotion's; ``serving`` runs it over
the answers of one StreamPipeline call and keeps nothing after it.
"""

from emotion.tracking.assignment import assign
from emotion.tracking.tracker import Box, Observation, Tracker, TrackSummary, iou

__all__ = ["Box", "Observation", "TrackSummary", "Tracker", "assign", "iou"]

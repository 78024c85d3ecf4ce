"""What training adds to inference: the point-supervision strategies and their targets."""

from vitp.training.point_supervision import GroundTruthPoints, PointTargets, ProposalPoints

__all__ = ["GroundTruthPoints", "PointTargets", "ProposalPoints"]

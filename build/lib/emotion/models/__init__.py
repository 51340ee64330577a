"""Models: detectors, backbones, the joint CocoER model and face models."""

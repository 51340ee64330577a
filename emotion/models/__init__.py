"""Models: detectors, backbones, the joint CocoER model, DSCT and face models."""

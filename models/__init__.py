"""Cost models: predictors of memory, speed, energy and quality for a deployment candidate.

``models.analytical`` is the roofline model with documented efficiency factors;
``models.quality`` predicts quality loss from published and measured results.
"""

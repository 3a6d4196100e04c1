"""lidlib: layer-wise increment decomposition (LID) and the LRP family, after Chen, Li, Shao and Sun (2024)."""

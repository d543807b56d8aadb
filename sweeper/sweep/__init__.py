"""The parent side of a sweep: the loop, one trial's lifecycle, the process seam to trial processes, this
machine's slots, progress, retention of weights and the doctor."""

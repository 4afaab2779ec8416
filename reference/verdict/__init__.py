"""The verdict: the comparison engine (one module, one candidate, one set of inputs -> a verdict per output and
gradient), the tolerance policy it judges by, and the one assertion helper the suite fails through."""

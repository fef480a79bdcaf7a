"""Compute kernels of the ℓ∞-distance nets: the tiled ℓp-distance op (chunked torch) and its Triton counterpart.

Below the method modules: they know nothing of methods, configs or stages, only tensors.
"""

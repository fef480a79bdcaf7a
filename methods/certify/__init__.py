"""The certify stage: certifiers and empirical evaluators, by name (registry), and the step that runs them (step).

smoothing (CERTIFY, PREDICT, T-CERTIFY as sampling plans; `Smooth`), sampling (the plain and fast drivers of those
plans), adaptive (the sequential certifier), linf (ℓ∞-dist certificates and attacks' empirical radii, a batch at a
time), attacks (AutoAttack, PGD presets, the empirical radius).

    python -m methods certify --run cohen-0.25 --seed 0 --certifier cohen     (what the rule `certify` runs)
"""

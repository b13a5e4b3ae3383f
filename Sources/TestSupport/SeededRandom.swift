// The seeded PRNG lives in its own floor module (Target's simulated ring uses it too); every user of the
// test-support library gets it with this import.
@_exported import DeterministicRandom

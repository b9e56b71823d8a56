"""Selection analyses on codon alignments (FEL)."""

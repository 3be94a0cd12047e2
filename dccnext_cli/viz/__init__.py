"""The paper's figures: Figure 3 (the clusters a DCConv computed) and Figure 4 (its kernel weights per slot)."""

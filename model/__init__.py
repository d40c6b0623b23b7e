"""DFMQ-MC: dynamic fusion on modality quality with text-anchored cross-modal consistency."""

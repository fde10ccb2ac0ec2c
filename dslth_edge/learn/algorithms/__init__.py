"""The learning algorithms, one module each, behind one interface (:mod:`.base`); :mod:`.registry` names them."""

"""Raw episode formats (our Crafter recordings, VPT contractor data, Crafter `.npz`) and the
episode dataset written from them."""

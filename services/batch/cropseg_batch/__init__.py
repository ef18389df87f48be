"""cropseg for whole fields: orthomosaics window by window (:mod:`.raster`) and a season of
images and rasters under an S3 prefix as one batch (:mod:`.batch`)."""

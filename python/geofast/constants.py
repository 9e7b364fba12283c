"""Constants used in more than one place, defined once, with their sources."""

from __future__ import annotations

#: IUGG mean Earth radius (km): the default of ``haversine``/``haversine_matrix``.
EARTH_RADIUS_KM = 6371.0088
#: The sphere of visloc (Search-within-Cell's DBSCAN) and OSV-5M's haversine accuracy: R = 6371 km.
HAVERSINE_RADIUS_KM = 6371.0

#: Prediction Density radius r (km): PD_r = softmax mass within r of the top-1 (visloc, adapted).
PD_RADIUS_KM = 25.0
#: An image is "localizable" when PD_25 > this (visloc's split).
LOCALIZABLE_THRESHOLD = 0.2

#: CLIP ViT-L/14 projected features (input of GeoCLIP's image head).
CLIP_DIM = 768
#: GeoCLIP's shared image/location embedding size.
GEOCLIP_DIM = 512

#: Accuracy radii (km) of GeoCLIP / Img2Loc / G3 / visloc tables: street, city, region, country, continent.
ACCURACY_RADII_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)
#: GeoScore = 5000 · exp(−d / GEOSCORE_SCALE_KM) (GeoGuessr's scoring, as OSV-5M reports it).
GEOSCORE_SCALE_KM = 1492.7

#: CSV column names accepted for the image, latitude and longitude (compared lower-cased, stripped;
#: the first match in this order wins).
IMAGE_COLUMNS = ("image", "img_id", "img", "image_id", "image_path", "filename", "file", "path", "id")
LAT_COLUMNS = ("lat", "latitude", "gps_lat", "lat_deg")
LON_COLUMNS = ("lon", "lng", "long", "longitude", "gps_lon", "lon_deg")

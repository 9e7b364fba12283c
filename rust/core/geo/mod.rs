//! Geometry on the sphere and the ellipsoid: great-circle (haversine) and WGS-84 geodesic
//! distances, GeoCLIP's Equal Earth projection, unit vectors and spherical centroids.

pub mod equal_earth;
pub mod geodesic;
pub mod haversine;
pub mod pairs;
pub mod sphere;

# Provides the imported target DNNL::dnnl (oneDNN 2.x) when oneDNN is
# installed, and sets EINMOE_DNNL_FOUND. Used by einmoe's build and by its
# installed package config.
#
# Debian's dnnl-config.cmake insists on OpenCL's development files (only a
# Recommends of libdnnl-dev) although einmoe uses only the CPU engine. So:
# use the package's config when OpenCL is there, else import the library
# directly.
set(EINMOE_DNNL_FOUND FALSE)
if(NOT TARGET DNNL::dnnl)
  find_package(OpenCL QUIET)
  if(OpenCL_FOUND)
    find_package(dnnl CONFIG QUIET)
  endif()
endif()
if(NOT TARGET DNNL::dnnl)
  find_path(EINMOE_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.hpp)
  find_library(EINMOE_DNNL_LIBRARY NAMES dnnl)
  if(EINMOE_DNNL_INCLUDE_DIR AND EINMOE_DNNL_LIBRARY)
    add_library(DNNL::dnnl SHARED IMPORTED)
    set_target_properties(DNNL::dnnl PROPERTIES
      IMPORTED_LOCATION "${EINMOE_DNNL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${EINMOE_DNNL_INCLUDE_DIR}")
  endif()
endif()
if(TARGET DNNL::dnnl)
  # einmoe is written against the oneDNN 2.x API (scales as primitive attributes).
  get_target_property(_einmoe_dnnl_inc DNNL::dnnl INTERFACE_INCLUDE_DIRECTORIES)
  find_file(_einmoe_dnnl_version oneapi/dnnl/dnnl_version.h HINTS ${_einmoe_dnnl_inc} NO_CACHE)
  if(_einmoe_dnnl_version)
    file(STRINGS "${_einmoe_dnnl_version}" _einmoe_dnnl_major REGEX "#define DNNL_VERSION_MAJOR")
    string(REGEX MATCH "[0-9]+" _einmoe_dnnl_major "${_einmoe_dnnl_major}")
    if(_einmoe_dnnl_major EQUAL 2)
      set(EINMOE_DNNL_FOUND TRUE)
    else()
      message(STATUS "einmoe: oneDNN ${_einmoe_dnnl_major}.x found; einmoe needs the 2.x API")
    endif()
  endif()
endif()

//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use grain_protocol::{ModelList, ModelObject};

use crate::errors::ApiError;
use crate::state::AppState;

fn model_object(state: &AppState, id: &str) -> ModelObject {
    let card = state.engine().model_card();
    ModelObject {
        id: id.to_owned(),
        object: "model".into(),
        created: card.created,
        owned_by: "grain".into(),
        max_model_len: Some(card.context_length),
        granularities: card.granularities.clone(),
        has_router: Some(card.has_router),
    }
}

/// The served model, then each alias (all name the same model).
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let card_id = state.engine().model_card().id.clone();
    let data = std::iter::once(card_id.as_str())
        .chain(state.config().model_aliases.iter().map(String::as_str))
        .map(|id| model_object(&state, id))
        .collect();
    Json(ModelList::new(data))
}

pub async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if state.resolve_model(&id).is_some() {
        Json(model_object(&state, &id)).into_response()
    } else {
        ApiError::ModelNotFound(id).into_response()
    }
}
